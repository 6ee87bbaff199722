"""The deepserve engine: a DeepSeek-style PyTorch inference engine served by Triton."""
