// {{name}}: a routing rule for Shoal's gateway, in JavaScript.
//
// Round-robin over the healthy endpoints. The state lives in this instance (the gateway keeps
// one instance per worker); read from the request only what your rule needs, each read is a call
// into the host: request.path(), request.header('x-user'), request.clientIp(), ...

let healthy = [];
let turn = 0;

export const routing = {
  update(endpoints) {
    healthy = [];
    endpoints.forEach((endpoint, index) => {
      if (endpoint.healthy) healthy.push(index);
    });
  },

  route(request) {
    if (healthy.length === 0) return undefined; // no endpoint: the gateway answers 503
    const pick = healthy[turn % healthy.length];
    turn += 1;
    return pick;
  },

  onComplete(index, status, latencyUs) {},
};
