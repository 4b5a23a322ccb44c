/* Runs l2mu-imu.js under node with the watch APIs stubbed and drives it like a watch would.
 *
 *   node test_pack.js            -> JSON on stdout: inputs, every packet attempted, the
 *                                   bytes of those "sent", and what the firmware did to
 *                                   the watch (setServices, accelerometer writes)
 *
 * Assertions here cover the firmware's own contract; tests/test_firmware_bangle.py then
 * decodes the packets with the Python decoder and checks the round trip.
 */
"use strict";
var assert = require("assert");
var path = require("path");

var now = 1700000000.0; // seconds, like getTime(); its ms value exceeds 2^32 on purpose
var calls = { setServices: [], updateServices: 0, accelWr: [], pollInterval: [], options: [] };
var failOnUpdate = {}; // updateServices call numbers (1-based) that throw, as a full BLE queue does
var listeners = {};
var attempts = [];

global.getTime = function () {
  return now;
};
global.E = {
  clip: function (v, lo, hi) {
    return Math.min(Math.max(v, lo), hi);
  },
};
global.NRF = {
  setServices: function (services, options) {
    calls.setServices.push({ services: services, options: options });
  },
  updateServices: function (update) {
    calls.updateServices++;
    var value = update[fw().L2MU_SERVICE][fw().L2MU_IMU].value;
    var attempt = { bytes: Buffer.from(value).toString("hex"), sent: !failOnUpdate[calls.updateServices] };
    attempts.push(attempt);
    if (!attempt.sent) throw new Error("BLE queue full");
  },
  on: function (event, fn) {
    listeners["NRF." + event] = fn;
  },
};
global.Bangle = {
  on: function (event, fn) {
    listeners["Bangle." + event] = fn;
  },
  removeListener: function (event, fn) {
    if (listeners["Bangle." + event] === fn) delete listeners["Bangle." + event];
  },
  accelWr: function (reg, value) {
    calls.accelWr.push([reg, value]);
  },
  setPollInterval: function (ms) {
    calls.pollInterval.push(ms);
  },
  setOptions: function (options) {
    calls.options.push(options);
  },
};

var firmware = require(path.join(__dirname, "l2mu-imu.js"));
function fw() {
  return firmware;
}

// --- pure helpers ---
assert.strictEqual(firmware.pickRate(0), 12.5);
assert.strictEqual(firmware.pickRate(20), 25);
assert.strictEqual(firmware.pickRate(37.5), 50); // tie between 25 and 50: the higher
assert.strictEqual(firmware.pickRate(1000), 100);
assert.strictEqual(firmware.toCounts(1, 4), 8192);
assert.strictEqual(firmware.toCounts(-9, 4), -32768);
var p = firmware.packBatch(0x1234, 25, 4, 4294967296 + 5, [1, -1, 32767]);
assert.strictEqual(Buffer.from(p).toString("hex"), "01003412c40904000005000000" + "0100ffffff7f");

// --- install: the service is registered and advertised, uart kept ---
assert.strictEqual(calls.setServices.length, 1);
var services = calls.setServices[0].services[firmware.L2MU_SERVICE];
assert.ok(services[firmware.L2MU_IMU].notify);
assert.deepStrictEqual(calls.setServices[0].options.advertise, [firmware.L2MU_SERVICE]);
assert.strictEqual(calls.setServices[0].options.uart, true);
var control = services[firmware.L2MU_CONTROL].onWrite;

function write(bytes) {
  control({ data: new Uint8Array(bytes).buffer });
}

// --- a session: START 25 Hz, 5 samples per packet; one refused packet; one pause; STOP ---
failOnUpdate[2] = true;
write([0x01, 0xc4, 0x09, 5]); // 2500 cHz
assert.deepStrictEqual(calls.pollInterval, [40]);
assert.deepStrictEqual(calls.accelWr.slice(-2), [[0x1b, 0x41], [0x18, 0xec]]);
var accel = listeners["Bangle.accel"];
assert.ok(accel, "START subscribes to accel events");

var inputs = [];
function sample(i) {
  // Bounded test signal, plus one reading beyond +/-4 g to exercise saturation.
  var x = i === 7 ? 5.5 : Math.sin(i / 3) * 1.5;
  var y = Math.cos(i / 5) - 0.25;
  var z = (i % 11) / 10 - 0.5;
  inputs.push({ t: now, x: x, y: y, z: z });
  accel({ x: x, y: y, z: z });
}
for (var i = 0; i < 13; i++) {
  sample(i);
  now += 0.04;
}
now += 1.0; // the watch stalls for a second: the half-full packet must be cut here
for (i = 13; i < 23; i++) {
  sample(i);
  now += 0.04;
}
write([0x02]); // STOP flushes what is left
assert.ok(!listeners["Bangle.accel"], "STOP unsubscribes");
assert.deepStrictEqual(calls.options.slice(-1), [{ powerSave: true }]);
write([0x7f]); // unknown opcode: ignored

assert.strictEqual(firmware.streamer.failed, 1);
process.stdout.write(
  JSON.stringify({
    service: firmware.L2MU_SERVICE,
    imu: firmware.L2MU_IMU,
    control: firmware.L2MU_CONTROL,
    inputs: inputs,
    attempts: attempts,
    rates: [0, 10, 20, 37.5, 60, 500].map(function (hz) {
      return [hz, firmware.pickRate(hz)];
    }),
  })
);
