// {{name}}: a health check for Shoal, in JavaScript.
//
// Healthy when the task's first port accepts TCP connections. The probe reaches only the checked
// task's own ports; httpGet(port, '/health', timeoutMs) reads an HTTP answer. A probe error is
// thrown, with the WIT error in `payload`.

import { tcpConnect } from 'shoal:plugin/probe@0.1.0';

export const health = {
  check(target) {
    if (target.ports.length === 0) {
      return { status: 'unhealthy', message: 'the task has no port to probe' };
    }
    const port = target.ports[0];
    try {
      tcpConnect(port, 1000);
    } catch (e) {
      const why = e.payload ? `${e.payload.tag}${e.payload.val ? ` ${e.payload.val}` : ''}` : String(e);
      return { status: 'unhealthy', message: `port ${port}: ${why}` };
    }
    return { status: 'healthy', message: `port ${port} accepts connections` };
  },
};
