// Sample web app for imgforge's buildpack tests (tests/buildpacks.rs).
// Answers every request on $PORT with a line that shows the greeting module
// (put in node_modules by testdata/buildpacks/node from its vendored store)
// and which node runs it.
'use strict';

const http = require('http');
const greeting = require('imgforge-greeting');

const MARKER = 'imgforge-node-sample-9c2e';
const port = Number(process.env.PORT || 5000);

http
  .createServer((req, res) => {
    const body = `${MARKER} ${greeting.hello('web')} node=${process.execPath} ` +
      `greeting-from=${require.resolve('imgforge-greeting')} NODE_ENV=${process.env.NODE_ENV}\n`;
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  })
  .listen(port, '0.0.0.0', () => console.log(`listening on port ${port}`));
