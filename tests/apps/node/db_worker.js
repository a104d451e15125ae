// Database clients of Node.js (pg, mysql2, redis from npm: their protocol code is JavaScript)
// driven over stdin, so tests decide when each runs. Commands (one per line): `pg PORT`,
// `mysql PORT`, `redis PORT` (each connects, runs its workload with a secret among the values
// and one failing call, and disconnects), `exit`. Prints `ok <command>` after each.
const readline = require("node:readline");

async function pg(port) {
  const { Client } = require("pg");
  const client = new Client({ host: "127.0.0.1", port, user: "app", database: "shop", application_name: "node-worker" });
  await client.connect();
  await client.query("CREATE TABLE IF NOT EXISTS node_users (id serial PRIMARY KEY, name text, secret text)");
  await client.query("INSERT INTO node_users (name, secret) VALUES ($1, $2)", ["ann", "s3cret"]);
  const byName = { name: "by-name", text: "SELECT id FROM node_users WHERE name = $1", values: ["ann"] };
  await client.query(byName);
  await client.query(byName);
  await client.query("SELECT * FROM nope").catch(() => {});
  await client.end();
}

async function mysql(port) {
  const driver = require("mysql2/promise");
  const connection = await driver.createConnection({ host: "127.0.0.1", port, user: "app", database: "shop" });
  await connection.query("CREATE TABLE IF NOT EXISTS node_users (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64), secret TEXT)");
  await connection.execute("INSERT INTO node_users (name, secret) VALUES (?, ?)", ["ann", "s3cret"]);
  await connection.execute("SELECT id FROM node_users WHERE name = ?", ["ann"]);
  await connection.query("SELECT * FROM nope").catch(() => {});
  await connection.end();
}

async function redis(port) {
  const { createClient } = require("redis");
  const client = createClient({ url: `redis://127.0.0.1:${port}` });
  client.on("error", () => {});
  await client.connect();
  await client.set("node:1", "s3cret");
  await client.get("node:1");
  await client.multi().set("node:counter", "1").incr("node:counter").exec();
  await client.lPush("node:1", "x").catch(() => {});
  await client.quit();
}

const workloads = { pg, mysql, redis };
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const [command, port] = line.trim().split(" ");
  if (command === "exit") {
    console.log("ok exit");
    process.exit(0);
  }
  await workloads[command](Number(port));
  console.log(`ok ${line.trim()}`);
});
