'use strict';
// A tiny Express app: what compare.sh builds is this directory with the node_modules that
// `npm ci` makes from package-lock.json.
const express = require('express');
const compression = require('compression');
const helmet = require('helmet');
const morgan = require('morgan');

const app = express();
app.use(helmet());
app.use(compression());
app.use(morgan('tiny'));
app.get('/', (req, res) => res.send('hello from the imgforge bench app\n'));
app.get('/healthz', (req, res) => res.json({ ok: true }));

const port = Number(process.env.PORT || 5000);
app.listen(port, '0.0.0.0', () => console.log(`listening on ${port}`));
