"""Benchmarks that print ratios measured side by side in one run (`mvq bench NAME`, or
``python -m mvq.bench.NAME``). They ship with the package: no source checkout needed."""

# `mvq bench` name -> module in this package
BENCHMARKS = {"layers": "layers", "mh-dropout": "mh_dropout", "quantizer": "quantizer",
              "sampling": "sampling", "concurrent-train": "concurrent_train"}
