//! For plugin tests: near-JSON texts, to check a plugin's own reading of payloads (an
//! `on_event_text` path, say) against the general path on many inputs, not only on the cases
//! its author thought of. The SDK's own reader is checked against serde_json the same way.

/// `count` texts made from `seeds` (taken in turn), each with one to three characters of
/// `alphabet` inserted, removed or replaced at random places. The order is fixed (xorshift64*
/// from a constant seed), so a failing case comes back on every run. Many of the texts are not
/// JSON; the server passes plugins JSON only, so a plugin's test keeps the ones that are.
pub fn mutations<'a>(
    seeds: &'a [&'a str],
    alphabet: &'a [char],
    count: usize,
) -> impl Iterator<Item = String> + 'a {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = move |below: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % below
    };
    (0..count).map(move |round| {
        let mut text: Vec<char> = seeds[round % seeds.len()].chars().collect();
        for _ in 0..=random(3) {
            let position = random(text.len() + 1);
            let character = alphabet[random(alphabet.len())];
            match random(3) {
                0 => text.insert(position, character),
                1 if position < text.len() => {
                    text.remove(position);
                }
                _ if position < text.len() => text[position] = character,
                _ => text.push(character),
            }
        }
        text.into_iter().collect()
    })
}
