"""The demo model, ``monolith.demo:DeepFM``, through the README's commands: trained and exported by
``monolith train`` / ``monolith export``, then served over HTTP by uvicorn on 127.0.0.1, whose
predictions must equal ``Estimator.predict``'s on the same MovieLens test examples (within the
half precision of the served embedding rows, Fp16 by default)."""

from __future__ import annotations

import itertools
import json

import httpx
import numpy as np

from monolith import cli
from monolith.demo import FEATURES, DeepFM
from monolith.estimator import Estimator, RunConfig
from monolith.serving import ServingModel
from monolith.serving.server import create_app
from test_serving import serve  # noqa: F401 - the fixture starting uvicorn on 127.0.0.1


STEPS, PREDICT_BATCHES, BATCH = 20, 2, 64


def test_deepfm_exports_and_serves_what_estimator_predict_gives(tmp_path, capsys, serve):  # noqa: F811
    model_dir = str(tmp_path / "deepfm")
    common = ["--model", "monolith.demo:DeepFM", "--model-dir", model_dir, "--threads", "1",
              "--param", f"train.per_replica_batch_size={BATCH}", "--param", f"eval.per_replica_batch_size={BATCH}",
              "--param", "epochs=1"]
    assert cli.main(["train", *common, "--max-steps", str(STEPS)]) == 0
    assert cli.main(["export", *common]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["outputs"] == ["ctr"]
    assert exported["tables"] == sorted(FEATURES)

    p = DeepFM.params()
    p.train.per_replica_batch_size = p.eval.per_replica_batch_size = BATCH
    estimator = Estimator(p.instantiate(), RunConfig(model_dir=model_dir, enable_summaries=False, progress_bar=False))
    want = np.asarray(list(estimator.predict(steps=PREDICT_BATCHES)), dtype=np.float64)

    url = serve(create_app(ServingModel.load(exported["export"])))
    served = []
    for batch in itertools.islice(estimator.model.input_fn("infer"), PREDICT_BATCHES):
        request = {"sparse": {name: batch.sparse[name].to_lists() for name in FEATURES}}
        answer = httpx.post(f"{url}/v1/predict", json=request, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == STEPS
        served.extend(answer.json()["outputs"]["ctr"])
    assert len(served) == len(want) == PREDICT_BATCHES * BATCH
    np.testing.assert_allclose(served, want, atol=2e-3, rtol=0)
    assert np.std(want) > 1e-3  # the predictions depend on the examples: the comparison is not of constants
