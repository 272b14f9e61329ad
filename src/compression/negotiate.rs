//! Choosing a stream's encoding from the request's `Accept-Encoding`
//! (RFC 9110, section 12.5.3).

use http::{HeaderMap, header::ACCEPT_ENCODING};

use super::Compression;

/// An encoding a stream can be compressed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Zstd,
    Br,
    Gzip,
    Deflate,
}

/// The server's order, for the encodings a client weighs alike.
const PREFERENCE: [Encoding; 4] = [
    Encoding::Zstd,
    Encoding::Br,
    Encoding::Gzip,
    Encoding::Deflate,
];

impl Encoding {
    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }

    /// Enabled in `settings`, and compiled in.
    fn enabled(self, settings: &Compression) -> bool {
        match self {
            Self::Zstd => cfg!(feature = "zstd") && settings.zstd,
            Self::Br => cfg!(feature = "br") && settings.br,
            Self::Gzip => cfg!(feature = "gzip") && settings.gzip,
            Self::Deflate => cfg!(feature = "deflate") && settings.deflate,
        }
    }

    /// Whether a token of the header names this encoding (`x-gzip` is gzip).
    fn named_by(self, token: &str) -> bool {
        token.eq_ignore_ascii_case(self.token())
            || (self == Self::Gzip && token.eq_ignore_ascii_case("x-gzip"))
    }
}

/// The encoding of a stream for a request with `headers`, or `None` for an
/// uncompressed one: the enabled encoding with the highest `q` above zero,
/// ties going to [`PREFERENCE`]. A header that cannot be read counts as absent.
pub(crate) fn negotiate(headers: &HeaderMap, settings: &Compression) -> Option<Encoding> {
    // Weights in thousandths: `q` has at most three decimals.
    let mut weights = [None::<u16>; PREFERENCE.len()];
    let mut wildcard = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let value = value.to_str().ok()?;
        for item in value.split(',') {
            let mut params = item.split(';');
            let token = params.next().unwrap_or_default().trim();
            if token.is_empty() {
                continue;
            }
            let mut weight = 1000;
            for param in params {
                let (name, q) = param.split_once('=')?;
                if name.trim().eq_ignore_ascii_case("q") {
                    weight = parse_q(q.trim())?;
                }
            }
            if token == "*" {
                wildcard = Some(weight);
            }
            for (encoding, slot) in PREFERENCE.iter().zip(&mut weights) {
                if encoding.named_by(token) {
                    *slot = Some(weight);
                }
            }
        }
    }
    let mut best: Option<(Encoding, u16)> = None;
    for (encoding, weight) in PREFERENCE.into_iter().zip(weights) {
        let Some(weight) = weight.or(wildcard) else {
            continue;
        };
        if weight == 0 || !encoding.enabled(settings) {
            continue;
        }
        // Strictly higher: a tie keeps the server's earlier choice.
        if best.is_none_or(|(_, best)| weight > best) {
            best = Some((encoding, weight));
        }
    }
    best.map(|(encoding, _)| encoding)
}

/// A `q` value (`0`, `0.5`, `1.000`) in thousandths; `None` if it is not one.
fn parse_q(q: &str) -> Option<u16> {
    let (whole, fraction) = q.split_once('.').unwrap_or((q, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(accept: &[&str], settings: &Compression) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(ACCEPT_ENCODING, value.parse().unwrap());
        }
        negotiate(&headers, settings).map(Encoding::token)
    }

    fn all() -> Compression {
        Compression::default()
    }

    #[test]
    fn q_values_parse_to_thousandths() {
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        for bad in ["", "2", "1.5", "0.1234", "-0", "0.x", "abc", ".5"] {
            assert_eq!(parse_q(bad), None, "{bad:?}");
        }
    }

    /// What needs every encoding compiled in.
    #[cfg(all(
        feature = "gzip",
        feature = "deflate",
        feature = "br",
        feature = "zstd"
    ))]
    mod every_encoding {
        use super::*;

        #[test]
        fn the_highest_q_wins_and_ties_follow_the_server() {
            assert_eq!(chosen(&["gzip, deflate, br, zstd"], &all()), Some("zstd"));
            assert_eq!(chosen(&["gzip, deflate"], &all()), Some("gzip"));
            assert_eq!(chosen(&["deflate"], &all()), Some("deflate"));
            assert_eq!(
                chosen(&["gzip;q=0.5, deflate;q=0.8"], &all()),
                Some("deflate")
            );
            assert_eq!(
                chosen(&["br;q=0.2, gzip;q=0.9, zstd;q=0.1"], &all()),
                Some("gzip")
            );
            assert_eq!(chosen(&["GZIP ; Q=1"], &all()), Some("gzip"));
            assert_eq!(chosen(&["x-gzip"], &all()), Some("gzip"));
            // Several headers add up.
            assert_eq!(chosen(&["deflate;q=0.5", "br"], &all()), Some("br"));
        }

        #[test]
        fn zero_refuses_and_the_wildcard_covers_the_rest() {
            assert_eq!(chosen(&["gzip;q=0"], &all()), None);
            assert_eq!(chosen(&["*"], &all()), Some("zstd"));
            assert_eq!(chosen(&["*, zstd;q=0"], &all()), Some("br"));
            assert_eq!(chosen(&["*;q=0, gzip"], &all()), Some("gzip"));
            assert_eq!(chosen(&["*;q=0"], &all()), None);
            assert_eq!(chosen(&["gzip;q=0.1, *;q=0.5"], &all()), Some("zstd"));
        }

        #[test]
        fn disabled_encodings_are_never_chosen() {
            let gzip_only = all().no_zstd().no_br().no_deflate();
            assert_eq!(chosen(&["zstd, br, gzip;q=0.1"], &gzip_only), Some("gzip"));
            assert_eq!(chosen(&["zstd, br"], &gzip_only), None);
        }
    }

    #[test]
    fn identity_when_nothing_matches_or_the_header_is_unreadable() {
        assert_eq!(chosen(&[], &all()), None);
        assert_eq!(chosen(&["identity"], &all()), None);
        assert_eq!(chosen(&["compress, sdch"], &all()), None);
        assert_eq!(chosen(&[""], &all()), None);
        assert_eq!(chosen(&["gzip;q=2"], &all()), None);
        assert_eq!(chosen(&["gzip;q"], &all()), None);
        assert_eq!(chosen(&["gzip;q=abc, br"], &all()), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT_ENCODING,
            http::HeaderValue::from_bytes(b"gzip\xff").unwrap(),
        );
        assert_eq!(negotiate(&headers, &all()), None);
    }
}
