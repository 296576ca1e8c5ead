from sentiment.model.triton_repository import TritonModelSpec, onnxruntime_config, python_backend_config

SPEC = TritonModelSpec(input_names=("input_ids", "attention_mask"), num_labels=3, fingerprints={"1": "abc"},
                       max_batch_size=32, max_queue_delay_us=1500, instance_count=2, intra_op_threads=1)


def test_onnxruntime_config_has_the_cluster_knobs():
    text = onnxruntime_config(SPEC)
    for fragment in ('backend: "onnxruntime"', "max_batch_size: 32", "max_queue_delay_microseconds: 1500",
                     "count: 2 kind: KIND_CPU", '"intra_op_thread_count" value: { string_value: "1" }',
                     '"fingerprint_v1" value: { string_value: "abc" }', "model_warmup", 'dims: [ 3 ]',
                     "version_policy: { specific: { versions: [ 1 ] } }"):
        assert fragment in text
    assert "token_type_ids" not in text


def test_python_config_serves_the_same_tensors():
    local, cluster = python_backend_config(SPEC), onnxruntime_config(SPEC)
    assert 'backend: "python"' in local
    start = cluster.index("input [")
    assert (
        cluster[start : cluster.index("dynamic_batching")]
        == local[local.index("input [") : local.index("dynamic_batching")]
    )


def test_every_served_version_and_its_fingerprint_is_in_every_configuration():
    from dataclasses import replace

    from sentiment.model.triton_repository import gpu_config

    spec = replace(SPEC, fingerprints={"2": "def", "10": "xyz", "1": "abc"})
    for text in (onnxruntime_config(spec), python_backend_config(spec), gpu_config(spec)):
        assert "version_policy: { specific: { versions: [ 1, 2, 10 ] } }" in text
        for version, fingerprint in spec.fingerprints.items():
            assert f'"fingerprint_v{version}" value: {{ string_value: "{fingerprint}" }}' in text
