// node-ws: Node.js `ws` echo peer for bench/ws-peers.sh (ws's defaults: no
// permessage-deflate on the server).
//
// GET / -> "ok"; GET /ws -> upgrade; every message is echoed (pings are
// answered by ws).
//
// Usage: node server.js [HOST:PORT]   (default 127.0.0.1:8092). `ws` comes
// from npm (ws-peers.sh installs it under bench/out/node-ws; NODE_PATH).
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const [host, port] = (process.argv[2] || '127.0.0.1:8092').split(':');
const server = http.createServer((req, res) => res.end('ok'));
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
});
server.listen(Number(port), host);
process.on('SIGTERM', () => process.exit(0));
