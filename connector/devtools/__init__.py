"""Developer tools: the Stripe emulator, the embedded broker, the demo, the sample producer."""
