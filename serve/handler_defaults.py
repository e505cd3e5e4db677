"""The one place for serving defaults (plain constants, no imports).

Shipped in every exported model directory beside handler.py, so the handler and serve/serve read
it without localsage; the localsage package reads this same file (export.serving_defaults()) to
write model-config.yaml, SageMaker deploy variables and CLI defaults.
"""

# TorchServe per-model settings (model-config.yaml keys). serve/serve maps the SAGEMAKER_* variables
# onto them; TorchServe's own defaults would be batch 1, 100 ms delay, one worker per CPU, 120 s.
SERVER = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5, "responseTimeout": 60}

# Labels returned per image when the request does not say (JSON/form/query `topk`, X-Topk header).
TOPK = 5

# Handler settings: these values <- `handler:` section of model-config.yaml <- LOCALSAGE_SERVE_<NAME>.
HANDLER = {
    "topk": TOPK,
    "max_image_bytes": 6 * 1024 * 1024,  # encoded bytes per image
    "max_pixels": 40_000_000,  # width*height per image, from the header, before decoding
    "max_request_pixels": 64_000_000,  # width*height summed over the images of one request
    "max_aspect": 8.0,  # longer/shorter side; beyond it the centre is cropped before resizing
    "request_time_s": 10.0,  # decode+preprocess seconds per request (checked between images)
    "batch_time_fraction": 0.5,  # share of responseTimeout a batch may spend preprocessing
    "max_images": 16,  # per request ("images"/"urls")
    "max_forward": 32,  # images per forward pass (bounds activation memory)
    "jpeg_draft": True,  # JPEG DCT-scaled decode, as the training loader does
    "threads": 0,  # torch intra-op threads per worker; 0 = CPUs / workers
    "fuse": True,  # fold BatchNorm into conv for CPU inference (checked numerically)
    "allow_urls": False,
    "url_allowlist": [],  # host names (exact, or ".example.com" for subdomains)
    "url_max_bytes": 6 * 1024 * 1024,
    "url_timeout": 5.0,  # seconds, whole download
}

# Preprocessing of models exported before model_config.json had a "preprocess" key: what localsage
# training did then (decode.decode + data.eval_transform): bilinear, antialiased, EXIF not applied.
LEGACY_PREPROCESS = {"interpolation": "bilinear", "antialias": True, "exif_transpose": False}
