"""GPO, the gradient-inspired prompt optimizer, and its baselines, composed on the engine."""
