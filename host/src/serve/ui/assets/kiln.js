// Kiln web UI
