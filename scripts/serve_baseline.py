"""The baseline `scripts/bench_serve.py` measures `dltrain serve` against: what a user would write without dltrain,
one uvicorn process of FastAPI calling Keras' `model.predict` on each request's image.

    python scripts/serve_baseline.py MODEL.keras --port 8001
"""

import argparse
import io

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras file")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    model = keras.models.load_model(args.model)
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(images: UploadFile) -> dict:
        pixels = np.asarray(Image.open(io.BytesIO(await images.read())).convert("L"), dtype=np.float32) / 255.0
        probabilities = model.predict(pixels[np.newaxis, ..., np.newaxis], verbose=0)[0]
        top = np.argsort(-probabilities)[:3]
        return {"top": [{"class": int(i), "probability": float(probabilities[i])} for i in top]}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
