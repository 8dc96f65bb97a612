'use strict';
// A tiny module in the node buildpack's vendored store (stands in for the npm registry).
const MARKER = 'imgforge-greeting-npm-1.0.0-77ab';
exports.hello = (who) => `hello ${who} from imgforge-greeting 1.0.0 (${MARKER})`;
