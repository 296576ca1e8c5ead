"""The docs' conventions, checked without running anything: every code block says what it is, a
block not run says why, an output follows a block that runs, JSON and YAML blocks parse, and every
relative link reaches a file and a heading that exist."""

import yaml

from tests.support.doc_blocks import NOT_RUN_LANGUAGES, RUNNABLE, all_blocks, anchors, documents, json_documents, \
    relative_links, rounded


def test_every_block_names_a_known_language():
    unknown = [f"{b.name} ({b.language or 'no language'})" for b in all_blocks()
               if b.language not in RUNNABLE | NOT_RUN_LANGUAGES]
    assert not unknown, f"say what each block is (bash/python run; text, json, yaml, promql do not): {unknown}"


def test_a_block_not_run_says_why_and_outputs_follow_a_block_that_runs():
    every = all_blocks()
    for index, block in enumerate(every):
        if block.marker and block.marker.startswith("not-run"):
            assert block.language in RUNNABLE, f"{block.name}: only bash/python blocks run, no need to mark it"
            assert len(block.not_run_reason or "") > 20, f"{block.name}: say why it is not run and what covers it"
        if block.is_output:
            before = every[index - 1] if index else None
            assert before is not None and before.path == block.path and before.runs, \
                f"{block.name}: an output block must follow a block that runs"
            assert block.marker == "output" or block.rounding is not None, (
                f"{block.name}: unknown marker {block.marker!r}"
            )


def test_json_and_yaml_blocks_parse():
    for block in all_blocks():
        if block.language == "json":
            assert json_documents(block.code), block.name
        if block.language == "yaml":
            list(yaml.safe_load_all(block.code))


def test_every_relative_link_reaches_an_existing_file_and_heading():
    broken = []
    for path in documents():
        for written, target, anchor in relative_links(path):
            if not target.exists():
                broken.append(f"{path.name}: {written} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{path.name}: {written} (no such heading)")
    assert not broken, broken


def test_rounding_and_json_documents_read_curl_output():
    printed = '{"status":"healthy"}{"predictions":[[{"label":"POSITIVE","score":0.9967444539070129}]]}'
    assert rounded(json_documents(printed), 3) == [{"status": "healthy"},
                                                   {"predictions": [[{"label": "POSITIVE", "score": 0.997}]]}]
