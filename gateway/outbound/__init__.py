"""What the gateway sends: notifications to departments, receipts to senders, through the outbox."""
