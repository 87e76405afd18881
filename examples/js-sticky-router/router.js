// A sticky-session router for Shoal, written in JavaScript.
//
// Requests that carry the same session key always reach the same healthy endpoint, as long as
// the set of healthy endpoints does not change. The key is the `x-session-id` header, else the
// client's IP address; a request with neither is sent round-robin. The key is hashed with
// 32-bit FNV-1a and taken modulo the number of healthy endpoints (in list order), so every
// implementation of this rule, in any language, picks the same endpoint.

import { log } from 'shoal:plugin/log@0.1.0';

let healthy = []; // indices of the healthy endpoints, in list order
let turn = 0;

function fnv1a(text) {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash >>> 0;
}

export const routing = {
  update(endpoints) {
    healthy = [];
    endpoints.forEach((endpoint, index) => {
      if (endpoint.healthy) healthy.push(index);
    });
    log('debug', `sticky router: ${healthy.length} of ${endpoints.length} endpoints healthy`);
  },

  route(request) {
    if (healthy.length === 0) return undefined;
    const key = request.header('x-session-id') ?? request.clientIp();
    if (!key) {
      const index = healthy[turn % healthy.length];
      turn += 1;
      return index;
    }
    return healthy[fnv1a(key) % healthy.length];
  },

  onComplete(index, status, latencyUs) {},
};
