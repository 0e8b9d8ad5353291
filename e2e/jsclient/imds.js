// imds.js runs the AWS SDK for JavaScript v3's instance metadata
// credential provider (@smithy/credential-provider-imds fromInstanceMetadata,
// which @aws-sdk/credential-providers and the default Node.js chain use)
// inside a sandbox pod, and prints one JSON object like bin/podclient's:
//
//   node imds.js creds [--calls N] [--timeout MS] [--max-retries N] [--v1-disabled]
//
// Each call of the provider is one credential resolution: a PUT for an
// IMDSv2 token, then GETs of iam/security-credentials/ and of the role, with
// the provider's own fallback to IMDSv1. --calls N calls one provider N
// times, which shows what it remembers between calls (after a 403 or 404 on
// the token PUT it stops asking for tokens). The endpoint is the SDK's:
// AWS_EC2_METADATA_SERVICE_ENDPOINT overrides it. Secrets are not printed.
"use strict";

const { fromInstanceMetadata } = require("@smithy/credential-provider-imds");

function parse(argv) {
  const opts = { cmd: argv[0], calls: 1, timeout: undefined, maxRetries: undefined, v1Disabled: false };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return Number(argv[++i]);
    };
    if (a === "--calls") opts.calls = next();
    else if (a === "--timeout") opts.timeout = next();
    else if (a === "--max-retries") opts.maxRetries = next();
    else if (a === "--v1-disabled") opts.v1Disabled = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (opts.cmd !== "creds" || !(opts.calls >= 1 && opts.calls <= 10)) {
    throw new Error("usage: imds.js creds [--calls 1..10] [--timeout MS] [--max-retries N] [--v1-disabled]");
  }
  return opts;
}

async function main() {
  let opts;
  try {
    opts = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${e.message}\n`);
    return 2;
  }
  const log = [];
  const record = (level) => (...args) => log.push(`${level}: ${args.map(String).join(" ")}`);
  const logger = { trace() {}, debug: record("debug"), info: record("info"), warn: record("warn"), error: record("error") };
  const provider = fromInstanceMetadata({
    timeout: opts.timeout,
    maxRetries: opts.maxRetries,
    ec2MetadataV1Disabled: opts.v1Disabled,
    logger,
  });
  const start = Date.now();
  const res = { ok: false, values: {}, errors: {} };
  for (let call = 1; call <= opts.calls; call++) {
    const name = `call${call}`;
    try {
      const creds = await provider();
      res.ok = true;
      res.access_key_id = creds.accessKeyId;
      res.values[name] = "ok";
      delete res.error;
      delete res.status;
    } catch (e) {
      res.ok = false;
      res.error = `${e.name}: ${e.message}`;
      if (typeof e.statusCode === "number") res.status = e.statusCode;
      res.errors[name] = res.status ? `${res.error} (${res.status})` : res.error;
    }
  }
  if (log.length) res.values.log = log.join("\n");
  res.elapsed_ms = Date.now() - start;
  process.stdout.write(JSON.stringify(res) + "\n");
  return 0;
}

main().then((code) => process.exit(code));
