import time

for i in range(1, 100):
    print(f"step {i}", flush=True)
    time.sleep(0.2)
