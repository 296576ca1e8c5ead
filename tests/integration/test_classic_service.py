"""The classic service `sentiment bench` measures against: it truncates long texts instead of crashing."""

from fastapi.testclient import TestClient

from sentiment.measure.classic_service import create_app


def test_the_classic_service_truncates_long_texts(tiny_checkpoints):
    client = TestClient(create_app(str(tiny_checkpoints["bert"]), None, threads=1, max_length=128))
    long_text = "The film is a joy from start to finish. " * 400  # about 4,000 tokens; the tiny model has 128 positions
    response = client.post("/project/bulk-predict", json={"text": [long_text, "too short to cut"]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and all(
        {p["label"] for p in ranked} == {"NEGATIVE", "POSITIVE"} for ranked in predictions
    )
    # what it reads of a long text is its first window: the same answer as for that window alone
    cut = client.post("/project/bulk-predict", json={"text": [long_text[:2000]]}).json()["predictions"][0]
    assert predictions[0] == cut
