// Preloaded (node --import) into example processes: the guide samples are written against
// http://localhost:8080, and the test server listens on a free port. This sends requests for
// that one origin to $NIMBUS_TEST_SERVER instead, leaving the sample's code untouched.
const target = process.env.NIMBUS_TEST_SERVER;
if (!target) throw new Error("NIMBUS_TEST_SERVER must name the test server, e.g. http://127.0.0.1:41234");
const targetUrl = new URL(target);
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  if (url.origin === "http://localhost:8080") {
    url.protocol = targetUrl.protocol;
    url.host = targetUrl.host;
  }
  return realFetch(url, init);
};
