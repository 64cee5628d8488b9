// A web app on Node's http module, with one npm dependency (`ms`) to show `npm ci` at work.
const http = require("http");
const fs = require("fs");
const ms = require("ms");

function version() {
  if (process.env.VERSION) return process.env.VERSION;
  try {
    return fs.readFileSync("VERSION", "utf8").trim();
  } catch {
    return "unknown";
  }
}

const started = Date.now();
http
  .createServer((req, res) => {
    if (req.url === "/uptime") {
      res.end(`up ${ms(Date.now() - started)}\n`);
      return;
    }
    res.end(`hello from ${process.env.APP} node ${version()} (${process.version})\n`);
  })
  .listen(Number(process.env.PORT), process.env.BIND_ADDRESS, () =>
    console.log(`listening on ${process.env.BIND_ADDRESS}:${process.env.PORT}`),
  );
