"""Where models come from and how they are held in memory; no HTTP and no asyncio here."""
