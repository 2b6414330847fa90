from concurrent.futures import as_completed

from gaspar2.client import Executor, RequestReset

with Executor("127.0.0.1:10123", max_workers=16) as executor:
    futures = {executor.submit(str(n)): n for n in range(100)}
    for future in as_completed(futures):
        try:
            print(futures[future], future.result())
        except RequestReset:
            print(futures[future], "failed on the server")
