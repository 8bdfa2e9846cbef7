"""WatchTasks: live task state pushed to every watcher, resumable across reconnects and gateways."""
