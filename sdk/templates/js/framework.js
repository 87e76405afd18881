// {{name}}: a scheduler framework for Shoal, in JavaScript.
//
// A skeleton that launches nothing: it declines every offer for five seconds and answers its HTTP
// endpoint (/v1/frameworks/<name>/...). An instance may be thrown away at any time, so keep what
// must last in the keyvalue store (import { get, set } from 'shoal:plugin/keyvalue@0.1.0').

export const scheduling = {
  init(config) {
    // Throw an Error to refuse the configuration.
  },

  resourceOffers(offers) {
    return offers.map((offer) => ({ tag: 'decline', val: { offerId: offer.id, refuseSeconds: 5 } }));
  },

  statusUpdate(status) {
    return [];
  },

  handleRequest(request) {
    const body = new TextEncoder().encode(`{{name}}: ${request.method} ${request.path}\n`);
    return { status: 200, headers: [['content-type', 'text/plain']], body };
  },

  tick(nowMs) {
    return [];
  },
};
