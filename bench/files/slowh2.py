"""N slow h2c readers (prior knowledge), each one stream GETting PATH and
reading RATE bytes/s off its socket for DUR seconds, acknowledging what it
read (flow control), with stream window SWIN and connection window CWIN
(browsers' 6 MiB / 15 MiB by default).
usage: slowh2.py PORT PATH N RATE DUR [SWIN CWIN]"""
import asyncio, sys
import h2.connection, h2.config, h2.events, h2.settings

# The arguments, the counts and the run are slow.py's (beside this file).
from slow import port, path, stats, main, read_paced

swin = int(sys.argv[6]) if len(sys.argv) > 6 else 6 * 1024 * 1024
cwin = int(sys.argv[7]) if len(sys.argv) > 7 else 15 * 1024 * 1024

async def one(i, s):
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", port))
    stats["connected"] += 1
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: swin})
    c.increment_flow_control_window(cwin - 65535)
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")], end_stream=True)
    await loop.sock_sendall(s, c.data_to_send())

    async def take(d):
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.ResponseReceived):
                if dict(ev.headers).get(b":status") == b"200":
                    stats["ok"] += 1
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return False
        out = c.data_to_send()
        if out:
            await loop.sock_sendall(s, out)
        return True
    await read_paced(s, take)

asyncio.run(main(one))
