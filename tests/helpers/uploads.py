"""One Home upload through AppTest: a small valid predictions CSV under a chosen file name."""

from __future__ import annotations

GOOD_CSV = b"example_id,split,p_A,p_B,gold\n" + b"".join(
    f"e{i},test,{0.9 - i / 50:.3f},{0.05 + i / 60:.3f},{'AB'[i % 3 == 0]}\n".encode()
    for i in range(20))


def submit_upload(at, file_name: str, pipeline: str, content: bytes = GOOD_CSV):
    """Put `content` in Home's upload box as `file_name`, name the pipeline, press Import."""
    at.file_uploader(key="import_file").set_value((file_name, content, "text/csv"))
    at.text_input(key="import_name").set_value(pipeline)
    return at.get("form_submit_button")[0].click().run()
