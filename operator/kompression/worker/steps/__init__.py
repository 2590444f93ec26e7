"""The graph techniques (torch, ONNX and TensorRT models), one module each; the registry that
names them beside the LLM techniques is kompression.worker.techniques.TECHNIQUES."""
