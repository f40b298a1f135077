"""Using a trained model: trace it, measure its cost, predict and generate with early exits, export a prefix."""
