"""⑥ Inference: bundle manifest, ONNX/torch runtimes, preprocessing, the infer → encode contract."""
