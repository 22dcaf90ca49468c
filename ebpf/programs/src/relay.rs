//! `sk_skb/stream_verdict`: the in-kernel relay of a pass-through connection. The proxy puts
//! both sockets of an allowed connection into `RELAY_SOCKETS` after it has written the bytes
//! classification read; from then on each byte either socket receives is sent out of its
//! peer here, without waking the proxy, and counted in `RELAY_PEERS`.

use aya_ebpf::{
    EbpfContext, bindings::sk_action, helpers::bpf_get_socket_cookie, programs::SkBuffContext,
};

use crate::maps::{RELAY_PEERS, RELAY_SOCKETS};

/// Redirects this chunk to the egress of the socket's peer; drops an empty one.
///
/// A socket the proxy did not pair (no `RELAY_PEERS` entry) keeps its bytes (`SK_PASS`): the
/// proxy reads them. A peer that is not in `RELAY_SOCKETS` yet (the moment between the two
/// inserts) also leaves the bytes on this socket, counted as `unpaired` so the proxy can
/// tell the hand-over failed rather than relay bytes out of order.
pub fn verdict(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(entry) = RELAY_PEERS.get_ptr_mut(&cookie) else {
        return sk_action::SK_PASS;
    };
    let len = u64::from(ctx.len());
    if len == 0 {
        // The segment that carried the FIN, with no data. Redirected, it would reach the
        // peer's send path as a write of nothing, which the kernel takes for a broken pipe
        // and stops the peer's relay. The FIN itself is the proxy's to pass on (it shuts
        // the peer's write side down once every byte before it went out).
        return sk_action::SK_DROP;
    }
    // SAFETY: `entry` points into a map value that stays valid while the program runs.
    let mut peer = unsafe { (*entry).peer };
    // Flags 0: to the peer's egress (out of it), not into its receive queue.
    let redirected = RELAY_SOCKETS.redirect_skb(ctx, &mut peer, 0) == i64::from(sk_action::SK_PASS);
    // SAFETY: as above. One socket's verdicts never run at once (the kernel reads a
    // socket's receive queue under its lock), and userspace only reads the counts, so a
    // plain add is not a lost update.
    unsafe {
        if redirected {
            (*entry).bytes += len;
        } else {
            (*entry).unpaired += len;
        }
    }
    sk_action::SK_PASS
}
