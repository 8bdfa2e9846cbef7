"""The peers' apps, task bodies and client calls, one module each, driven by bench/peers/driver.py."""
