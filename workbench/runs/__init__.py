"""What a run leaves behind: transcripts, check rounds, results, patches."""
