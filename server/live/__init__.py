"""What happens while nobody asks: the event hub, GPU snapshots, alerts and their webhook."""
