"""What a person sees of a run: progress views from status.json and launcher.json, and the monitor."""
