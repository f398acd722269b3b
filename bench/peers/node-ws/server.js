// node-ws: Node.js `ws` peer for bench/ws-peers.sh (ws's defaults: no
// permessage-deflate on the server).
//
// GET / -> "ok"; GET /ws -> upgrade; every message is echoed (pings are
// answered by ws). GET /ws/chat -> upgrade; a message from one goes to every
// /ws/chat connection (ws's broadcast recipe: the server's `clients` set).
//
// Usage: node server.js [HOST:PORT]   (default 127.0.0.1:8092). `ws` comes
// from npm (ws-peers.sh installs it under bench/out/node-ws; NODE_PATH).
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const [host, port] = (process.argv[2] || '127.0.0.1:8092').split(':');
const server = http.createServer((req, res) => res.end('ok'));
// Two paths on one HTTP server: noServer mode, the upgrade routed by path
// (ws's README, "Multiple servers sharing a single HTTP/S server").
const echo = new WebSocketServer({ noServer: true });
const chat = new WebSocketServer({ noServer: true });
echo.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
});
chat.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    for (const client of chat.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    }
  });
});
server.on('upgrade', (req, socket, head) => {
  const wss = { '/ws': echo, '/ws/chat': chat }[req.url.split('?')[0]];
  if (!wss) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});
server.listen(Number(port), host);
process.on('SIGTERM', () => process.exit(0));
