"""Measurement: everything that puts load on a service and writes down what it saw.

`k6` runs loadtest/simulate.js and reads its summary; `loadtest` is `sentiment loadtest` (cache
hit rates compared); `bench` is `sentiment bench` (this stack against `classic_service`, the
model alone, saturation); `levers` measures each serving knob; `report` is the one markdown writer
all of them use; `cli` turns their flags into typed options.
"""
