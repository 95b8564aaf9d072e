"""Tasks, readers for the CS224N files, tokenised batching, and task schedules."""
