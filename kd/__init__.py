"""kd: knowledge distillation pipeline."""
