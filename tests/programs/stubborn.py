import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ignoring SIGINT", flush=True)
while True:
    pass
