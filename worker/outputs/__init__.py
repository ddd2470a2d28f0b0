"""What a run leaves beside its checkpoints: metrics records, loss plots, TensorBoard, the published result."""
