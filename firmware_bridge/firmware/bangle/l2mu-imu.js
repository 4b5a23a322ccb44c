/* L2MU IMU profile, version 1: reference firmware for Bangle.js 2 (Espruino JavaScript).
 *
 * Streams the accelerometer over BLE notifications as specified in
 * firmware_bridge/PROTOCOL.md of the l2mu-agent repository. Upload: see README.md here.
 *
 * Plain ES5 on purpose: it runs unchanged on Espruino and, with NRF/Bangle/E/getTime
 * stubbed, under node (test_pack.js), which is how the packing is tested off the watch.
 */

var L2MU_SERVICE = "296a0001-e233-43a0-bd2e-ecb4574ec67f";
var L2MU_IMU = "296a0002-e233-43a0-bd2e-ecb4574ec67f";
var L2MU_CONTROL = "296a0003-e233-43a0-bd2e-ecb4574ec67f";

var VERSION = 1;
var HEADER_BYTES = 13;
var ACC_RANGE_G = 4; // the KX023 runs at +/-4 g (see setAccelRate): 8192 counts per g
var RATES_HZ = [12.5, 25, 50, 100];
var KX023_ODR_CODES = [0, 1, 2, 3]; // ODCNTL output data rate for each of RATES_HZ
var DEFAULT_RATE_HZ = 12.5; // the Bangle.js 2 default; a START without a rate gets this
var DEFAULT_MAX_SAMPLES = 8;
var MAX_SAMPLES_CAP = 19; // 13 + 19 * 6 = 127 bytes fits Bangle.js 2's 128-byte payload (MTU 131)
var MAX_DRIFT_S = 0.25; // end a packet early when real sampling strays this far from its schedule
var CLOCK_MODULO = 4294967296;

/** The supported rate closest to the request (the higher one on a tie); 0 means default. */
function pickRate(requestedHz) {
  if (!(requestedHz > 0)) return DEFAULT_RATE_HZ;
  var best = RATES_HZ[0];
  for (var i = 1; i < RATES_HZ.length; i++) {
    var d = Math.abs(RATES_HZ[i] - requestedHz);
    var bestD = Math.abs(best - requestedHz);
    if (d < bestD || (d === bestD && RATES_HZ[i] > best)) best = RATES_HZ[i];
  }
  return best;
}

/** g -> int16 counts at the given full scale, rounded and saturated. */
function toCounts(g, rangeG) {
  return E.clip(Math.round((g * 32768) / rangeG), -32768, 32767);
}

/** One IMU data packet (PROTOCOL.md). counts: [x0, y0, z0, x1, ...] int16 accelerometer counts. */
function packBatch(seq, rateHz, accRangeG, t0ms, counts) {
  var buf = new ArrayBuffer(HEADER_BYTES + counts.length * 2);
  var dv = new DataView(buf);
  dv.setUint8(0, VERSION);
  dv.setUint8(1, 0); // flags: Bangle.js 2 has no gyroscope
  dv.setUint16(2, seq & 0xffff, true);
  dv.setUint16(4, Math.round(rateHz * 100), true);
  dv.setUint8(6, accRangeG);
  dv.setUint16(7, 0, true); // gyro_range_dps: no gyroscope
  var t = Math.round(t0ms);
  // Arithmetic modulo, not ">>> 0": Espruino's integer conversion of a large double does
  // not wrap the way the spec requires.
  dv.setUint32(9, t - Math.floor(t / CLOCK_MODULO) * CLOCK_MODULO, true);
  for (var i = 0; i < counts.length; i++) dv.setInt16(HEADER_BYTES + 2 * i, counts[i], true);
  return new Uint8Array(buf);
}

/** Collects accelerometer readings into packets; send(bytes) returns false if it failed. */
function Streamer(send) {
  this.send = send;
  this.seq = 0;
  this.failed = 0;
  this.rate = DEFAULT_RATE_HZ;
  this.maxSamples = DEFAULT_MAX_SAMPLES;
  this.counts = [];
  this.t0 = 0;
}

Streamer.prototype.configure = function (rateHz, maxSamples) {
  this.flush();
  this.rate = rateHz;
  this.maxSamples = maxSamples > 0 ? Math.min(maxSamples, MAX_SAMPLES_CAP) : DEFAULT_MAX_SAMPLES;
};

/** One reading (g) that arrived at nowS (seconds, getTime()). */
Streamer.prototype.add = function (xg, yg, zg, nowS) {
  var n = this.counts.length / 3;
  // Samples in a packet are assumed evenly spaced; if reality left that schedule, start over.
  if (n > 0 && Math.abs(nowS - (this.t0 + n / this.rate)) > MAX_DRIFT_S) {
    this.flush();
  }
  if (this.counts.length === 0) this.t0 = nowS;
  this.counts.push(toCounts(xg, ACC_RANGE_G), toCounts(yg, ACC_RANGE_G), toCounts(zg, ACC_RANGE_G));
  if (this.counts.length / 3 >= this.maxSamples) this.flush();
};

Streamer.prototype.flush = function () {
  if (this.counts.length === 0) return;
  var packet = packBatch(this.seq, this.rate, ACC_RANGE_G, this.t0 * 1000, this.counts);
  // Counts attempts, not successes: a packet the BLE stack refused becomes a visible gap.
  this.seq = (this.seq + 1) & 0xffff;
  this.counts = [];
  if (!this.send(packet)) this.failed++;
};

function notifyPacket(packet) {
  var update = {};
  update[L2MU_SERVICE] = {};
  update[L2MU_SERVICE][L2MU_IMU] = { value: packet, notify: true };
  try {
    NRF.updateServices(update);
    return true;
  } catch (e) {
    return false; // not connected, notifications off, or the BLE queue is full
  }
}

var streamer = new Streamer(notifyPacket);
var streaming = false;

function onAccel(a) {
  streamer.add(a.x, a.y, a.z, getTime());
}

function setAccelRate(rateHz) {
  var code = KX023_ODR_CODES[RATES_HZ.indexOf(rateHz)];
  Bangle.accelWr(0x18, 0x6c); // CNTL1: standby (registers writable), high resolution, +/-4 g
  Bangle.accelWr(0x1b, code ? code | 0x40 : 0); // ODCNTL: data rate; ODR/2 filter above 12.5 Hz
  Bangle.accelWr(0x18, 0xec); // CNTL1: operating, high resolution, +/-4 g
  // Poll as fast as the sensor produces; this also switches powerSave off, which would
  // otherwise slow polling down whenever the watch lies still.
  Bangle.setPollInterval(1000 / rateHz);
}

function start(rateHz, maxSamples) {
  var rate = pickRate(rateHz);
  streamer.configure(rate, maxSamples);
  setAccelRate(rate);
  if (!streaming) Bangle.on("accel", onAccel);
  streaming = true;
}

function stop() {
  if (!streaming) return;
  streaming = false;
  Bangle.removeListener("accel", onAccel);
  streamer.flush();
  setAccelRate(DEFAULT_RATE_HZ);
  Bangle.setOptions({ powerSave: true });
}

/** Control characteristic write: [0x01, rate_cHz lo, hi, max_samples] starts, [0x02] stops. */
function onControl(evt) {
  var d = new Uint8Array(evt.data);
  if (d.length === 0) return;
  if (d[0] === 1) {
    start(d.length >= 3 ? (d[1] | (d[2] << 8)) / 100 : 0, d.length >= 4 ? d[3] : 0);
  } else if (d[0] === 2) {
    stop();
  } // other opcodes are ignored, as the spec requires
}

function install() {
  var services = {};
  services[L2MU_SERVICE] = {};
  services[L2MU_SERVICE][L2MU_IMU] = {
    value: [0],
    maxLen: HEADER_BYTES + 6 * MAX_SAMPLES_CAP,
    readable: true,
    notify: true
  };
  services[L2MU_SERVICE][L2MU_CONTROL] = { value: [0], maxLen: 4, writable: true, onWrite: onControl };
  // uart stays on so the Web IDE can still connect and so hosts can tell a Bangle apart.
  NRF.setServices(services, { advertise: [L2MU_SERVICE], uart: true });
  NRF.on("disconnect", stop);
}

if (typeof NRF !== "undefined" && typeof Bangle !== "undefined") install();

if (typeof module !== "undefined" && module.exports) {
  module.exports = {
    L2MU_SERVICE: L2MU_SERVICE,
    L2MU_IMU: L2MU_IMU,
    L2MU_CONTROL: L2MU_CONTROL,
    pickRate: pickRate,
    toCounts: toCounts,
    packBatch: packBatch,
    Streamer: Streamer,
    onControl: onControl,
    streamer: streamer
  };
}
