// Feature-bit, protocol-feature-bit and device-status names (virtio spec, vhost-user.rst, Linux UAPI); pure data.

export type DeviceType = 'net' | 'blk' | 'fs' | 'unknown';

/** VHOST_USER_PROTOCOL_F_* bit -> name (vhost-user.rst "Protocol features"). */
export const PROTOCOL_FEATURES: readonly string[] = [
  'MQ', 'LOG_SHMFD', 'RARP', 'REPLY_ACK', 'MTU', 'BACKEND_REQ', 'CROSS_ENDIAN', 'CRYPTO_SESSION',
  'PAGEFAULT', 'CONFIG', 'BACKEND_SEND_FD', 'HOST_NOTIFIER', 'INFLIGHT_SHMFD', 'RESET_DEVICE',
  'INBAND_NOTIFICATIONS', 'CONFIGURE_MEM_SLOTS', 'STATUS', 'XEN_MMAP', 'SHARED_OBJECT', 'DEVICE_STATE', 'SHMEM',
];
export type ProtocolFeature = (typeof PROTOCOL_FEATURES)[number];

/** Transport and vhost bits shared by every device type. */
const COMMON_FEATURES: Record<number, string> = {
  24: 'NOTIFY_ON_EMPTY', 26: 'LOG_ALL', 27: 'ANY_LAYOUT', 28: 'RING_INDIRECT_DESC', 29: 'RING_EVENT_IDX',
  30: 'PROTOCOL_FEATURES', 32: 'VERSION_1', 33: 'ACCESS_PLATFORM', 34: 'RING_PACKED', 35: 'IN_ORDER',
  36: 'ORDER_PLATFORM', 37: 'SR_IOV', 38: 'NOTIFICATION_DATA', 39: 'NOTIF_CONFIG_DATA', 40: 'RING_RESET',
  41: 'ADMIN_VQ',
};

/** Device-specific bits (0-23 and 42-63) per device type (virtio spec 5.1.3, 5.2.3, 5.11.3). */
const DEVICE_FEATURES: Record<DeviceType, Record<number, string>> = {
  net: {
    0: 'CSUM', 1: 'GUEST_CSUM', 2: 'CTRL_GUEST_OFFLOADS', 3: 'MTU', 5: 'MAC', 6: 'GSO', 7: 'GUEST_TSO4',
    8: 'GUEST_TSO6', 9: 'GUEST_ECN', 10: 'GUEST_UFO', 11: 'HOST_TSO4', 12: 'HOST_TSO6', 13: 'HOST_ECN',
    14: 'HOST_UFO', 15: 'MRG_RXBUF', 16: 'STATUS', 17: 'CTRL_VQ', 18: 'CTRL_RX', 19: 'CTRL_VLAN',
    20: 'CTRL_RX_EXTRA', 21: 'GUEST_ANNOUNCE', 22: 'MQ', 23: 'CTRL_MAC_ADDR', 50: 'DEVICE_STATS',
    52: 'VQ_NOTF_COAL', 53: 'NOTF_COAL', 54: 'GUEST_USO4', 55: 'GUEST_USO6', 56: 'HOST_USO',
    57: 'HASH_REPORT', 59: 'GUEST_HDRLEN', 60: 'RSS', 61: 'RSC_EXT', 62: 'STANDBY', 63: 'SPEED_DUPLEX',
  },
  blk: {
    0: 'BARRIER', 1: 'SIZE_MAX', 2: 'SEG_MAX', 4: 'GEOMETRY', 5: 'RO', 6: 'BLK_SIZE', 7: 'SCSI', 9: 'FLUSH',
    10: 'TOPOLOGY', 11: 'CONFIG_WCE', 12: 'MQ', 13: 'DISCARD', 14: 'WRITE_ZEROES', 15: 'LIFETIME',
    16: 'SECURE_ERASE', 17: 'ZONED',
  },
  fs: { 0: 'NOTIFICATION' },
  unknown: {},
};

export const FEATURE_BIT = {
  NOTIFY_ON_EMPTY: 24, LOG_ALL: 26, RING_INDIRECT_DESC: 28, RING_EVENT_IDX: 29, PROTOCOL_FEATURES: 30,
  VERSION_1: 32, ACCESS_PLATFORM: 33, RING_PACKED: 34, IN_ORDER: 35,
} as const;

export const PROTOCOL_BIT: Record<string, number> = Object.fromEntries(PROTOCOL_FEATURES.map((n, i) => [n, i]));

export function featureName(bit: number, device: DeviceType = 'unknown'): string {
  return COMMON_FEATURES[bit] ?? DEVICE_FEATURES[device][bit] ?? `bit${bit}`;
}

export function featureNames(mask: bigint, device: DeviceType = 'unknown'): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(featureName(bit, device));
  return out;
}

export function protocolFeatureNames(mask: bigint): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(PROTOCOL_FEATURES[bit] ?? `bit${bit}`);
  return out;
}

export const hasBit = (mask: bigint | undefined, bit: number): boolean => mask !== undefined && ((mask >> BigInt(bit)) & 1n) === 1n;

/** Virtio device status byte (SET_STATUS / GET_STATUS). */
export const STATUS_BITS: Record<number, string> = {
  0x01: 'ACKNOWLEDGE', 0x02: 'DRIVER', 0x04: 'DRIVER_OK', 0x08: 'FEATURES_OK', 0x40: 'NEEDS_RESET', 0x80: 'FAILED',
};
export function statusNames(status: number): string[] {
  if (status === 0) return ['RESET'];
  return Object.entries(STATUS_BITS).filter(([b]) => status & Number(b)).map(([, n]) => n);
}
