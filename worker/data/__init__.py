"""Training data from LLaMA-Factory's formats to the tensors of a micro-batch."""
