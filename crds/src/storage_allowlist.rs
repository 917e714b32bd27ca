//! Whether a Job's storage URL lies under one of the prefixes its fleet
//! allows (`assembly.storage.allowedPrefixes`). Both sides are brought to one
//! form before they are compared: scheme and host in lower case, default
//! ports made explicit, the path split into percent-decoded segments. A URL
//! whose path could mean something else once decoded (`.` or `..`
//! segments, encoded slashes or backslashes, NUL) is refused outright rather
//! than normalized, and a prefix always ends at a segment boundary, so
//! `s3://media` allows `s3://media/a.wav` but never `s3://media-evil/a.wav`.

use url::Url;

/// The schemes a Job may read from, and the ones it may also write to.
const READABLE: [&str; 5] = ["file", "gs", "s3", "https", "http"];
const WRITABLE: [&str; 3] = ["file", "gs", "s3"];

/// The only directory a worker pod mounts for data (an emptyDir), so the
/// only one a `file://` prefix may name: anything else on the pod's disk
/// (its ServiceAccount token, the image) is not Job storage.
pub const FILE_VOLUME_ROOT: &str = "/tmp/";

/// Whether a URL is read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A URL brought to the form prefixes are compared in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Canonical {
    scheme: String,
    host: String,
    port: Option<u16>,
    segments: Vec<String>,
}

/// Checks `url` against `prefixes`. The error says why in words and never
/// repeats a query string or userinfo (they may carry credentials).
pub fn check(url: &str, access: Access, prefixes: &[String]) -> Result<(), String> {
    let shown = crate::redact::url(url);
    let target = canonical(url).map_err(|why| format!("{shown} cannot be used: {why}"))?;
    let schemes: &[&str] = match access {
        Access::Read => &READABLE,
        Access::Write => &WRITABLE,
    };
    if !schemes.contains(&target.scheme.as_str()) {
        return Err(match access {
            Access::Read => format!("{shown} is not a file://, gs://, s3:// or https:// URL"),
            Access::Write => {
                format!("{shown} is not a file://, gs:// or s3:// URL (https:// is read-only)")
            }
        });
    }
    let allowed = prefixes
        .iter()
        .filter_map(|p| canonical_prefix(p).ok())
        .any(|prefix| under(&target, &prefix));
    if allowed {
        return Ok(());
    }
    Err(if prefixes.is_empty() {
        format!(
            "{shown} is not allowed: this fleet allows no storage (assembly.storage.allowedPrefixes is empty)"
        )
    } else {
        format!(
            "{shown} is not under a prefix this fleet allows (assembly.storage.allowedPrefixes: {})",
            prefixes.join(", ")
        )
    })
}

/// Checks a prefix as a fleet author writes it: a URL the matcher can use,
/// and for `file://` one under [`FILE_VOLUME_ROOT`].
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let canon = canonical_prefix(prefix).map_err(|why| format!("{prefix:?}: {why}"))?;
    if !READABLE.contains(&canon.scheme.as_str()) {
        return Err(format!(
            "{prefix:?} is not a file://, gs://, s3:// or https:// prefix"
        ));
    }
    if canon.scheme == "file" && canon.segments.first().map(String::as_str) != Some("tmp") {
        return Err(format!(
            "{prefix:?}: file:// prefixes must lie under {FILE_VOLUME_ROOT}, the one volume a worker mounts for data"
        ));
    }
    if canon.scheme != "file" && canon.host.is_empty() {
        return Err(format!("{prefix:?} names no bucket or host"));
    }
    Ok(())
}

fn under(target: &Canonical, prefix: &Canonical) -> bool {
    target.scheme == prefix.scheme
        && target.host == prefix.host
        && target.port == prefix.port
        && target.segments.len() > prefix.segments.len()
        && target.segments.starts_with(&prefix.segments)
        // A URL names an object, never the directory itself.
        && target.segments.last().is_some_and(|s| !s.is_empty())
}

fn canonical_prefix(prefix: &str) -> Result<Canonical, String> {
    let mut canon = canonical(prefix)?;
    // "s3://media/" and "s3://media" are the same prefix.
    if canon.segments.last().is_some_and(String::is_empty) {
        canon.segments.pop();
    }
    Ok(canon)
}

fn canonical(text: &str) -> Result<Canonical, String> {
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err("it holds spaces, control characters or backslashes".into());
    }
    let parsed = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not accepted".into());
    }
    let scheme = parsed.scheme().to_ascii_lowercase();
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    if scheme == "file" && !(host.is_empty() || host == "localhost") {
        return Err("a file:// URL names no host".into());
    }
    // The path as written, not as the parser normalized it: a `..` must be
    // refused, not resolved into somewhere else.
    let raw_path = raw_path(text, &scheme);
    let mut segments = Vec::new();
    for raw in raw_path.split('/').skip(1) {
        let segment = percent_decode(raw).ok_or("its path is not valid percent-encoded UTF-8")?;
        if segment == "." || segment == ".." {
            return Err("its path has . or .. segments".into());
        }
        if segment.contains(['/', '\\', '\0']) {
            return Err("its path has an encoded slash, backslash or NUL".into());
        }
        segments.push(segment);
    }
    Ok(Canonical {
        scheme,
        host: if host == "localhost" {
            String::new()
        } else {
            host
        },
        port: parsed.port_or_known_default(),
        segments,
    })
}

/// The path part of `text` (from the first `/` after the authority up to
/// `?` or `#`), as the user wrote it.
fn raw_path<'a>(text: &'a str, scheme: &str) -> &'a str {
    let rest = &text[scheme.len().min(text.len())..];
    let rest = rest.strip_prefix(':').unwrap_or(rest);
    let rest = rest.strip_prefix("//").map_or(rest, |after| {
        after.find('/').map_or("", |slash| &after[slash..])
    });
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes() -> Vec<String> {
        [
            "s3://media/",
            "gs://brand/jingles",
            "https://cdn.example/episodes/",
            "file:///tmp/media/",
        ]
        .map(String::from)
        .to_vec()
    }

    fn read(url: &str) -> Result<(), String> {
        check(url, Access::Read, &prefixes())
    }

    #[test]
    fn urls_under_a_prefix_pass() {
        for url in [
            "s3://media/a.wav",
            "s3://media/deep/er/a.wav",
            "gs://brand/jingles/intro.wav",
            "https://cdn.example/episodes/42.mp3",
            "file:///tmp/media/main.wav",
            "file://localhost/tmp/media/main.wav",
        ] {
            assert_eq!(read(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn prefixes_end_at_a_segment_boundary() {
        for url in [
            "s3://media-evil/a.wav",
            "s3://medi/a.wav",
            "gs://brand/jinglesx/intro.wav",
            "https://cdn.example/episodes-private/42.mp3",
            "https://cdn.example.evil/episodes/42.mp3",
            "file:///tmp/mediafoo/x.wav",
            "s3://media/",
            "s3://media",
        ] {
            assert!(read(url).is_err(), "{url} passed");
        }
    }

    #[test]
    fn dot_segments_are_refused_not_resolved() {
        for url in [
            "file:///tmp/media/../../var/run/secrets/kubernetes.io/serviceaccount/token",
            "file:///tmp/media/./a.wav",
            "s3://media/../other/a.wav",
            "https://cdn.example/episodes/../admin",
            "file:///tmp/media/%2e%2e/%2E%2E/etc/passwd",
            "file:///tmp/media/.%2e/x",
        ] {
            let err = read(url).unwrap_err();
            assert!(err.contains(". or .."), "{url}: {err}");
        }
    }

    #[test]
    fn percent_encoding_tricks_are_refused() {
        for url in [
            "file:///tmp/media%2F..%2F..%2Fetc/passwd",
            "file:///tmp/media/a%5c..%5cb",
            "s3://media/a%00.wav",
            "s3://media/%zz.wav",
            "https://cdn.example/episodes\\..\\x",
        ] {
            assert!(read(url).is_err(), "{url} passed");
        }
        // Plain encoded characters are just characters.
        assert_eq!(read("s3://media/my%20episode.wav"), Ok(()));
    }

    #[test]
    fn scheme_and_host_compare_without_case_and_ports_must_match() {
        assert_eq!(read("S3://MEDIA/a.wav"), Ok(()));
        assert_eq!(read("HTTPS://CDN.Example/episodes/42.mp3"), Ok(()));
        assert_eq!(read("https://cdn.example:443/episodes/42.mp3"), Ok(()));
        assert!(read("https://cdn.example:8443/episodes/42.mp3").is_err());
        assert!(read("http://cdn.example/episodes/42.mp3").is_err());
        // The path is compared as written: object keys are case-sensitive.
        assert!(read("s3://media/../MEDIA/a.wav").is_err());
        assert!(read("gs://brand/JINGLES/intro.wav").is_err());
    }

    #[test]
    fn presigned_queries_pass_and_never_show_in_messages() {
        let signed =
            "https://cdn.example/episodes/42.mp3?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA";
        assert_eq!(read(signed), Ok(()));
        let outside = "https://other.example/42.mp3?X-Amz-Signature=deadbeef";
        let err = read(outside).unwrap_err();
        assert!(!err.contains("deadbeef"), "{err}");
        assert!(err.contains("https://other.example/42.mp3"), "{err}");
        assert!(
            err.contains("s3://media/"),
            "names the allowed prefixes: {err}"
        );
    }

    #[test]
    fn userinfo_is_refused_and_hidden() {
        let err = read("https://cdn.example@evil.example/episodes/x").unwrap_err();
        assert!(err.contains("credentials"), "{err}");
        let err = read("https://user:hunter2@cdn.example/episodes/x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn outputs_must_be_writable_and_an_empty_list_allows_nothing() {
        assert!(
            check(
                "https://cdn.example/episodes/o.mp3",
                Access::Write,
                &prefixes()
            )
            .is_err()
        );
        assert_eq!(
            check("s3://media/o.mp3", Access::Write, &prefixes()),
            Ok(())
        );
        let err = check("s3://media/o.mp3", Access::Write, &[]).unwrap_err();
        assert!(err.contains("allows no storage"), "{err}");
        assert!(check("ftp://media/a.wav", Access::Read, &prefixes()).is_err());
        assert!(check("/tmp/media/a.wav", Access::Read, &prefixes()).is_err());
    }

    #[test]
    fn file_prefixes_must_name_the_data_volume() {
        assert_eq!(check_prefix("file:///tmp/media/"), Ok(()));
        assert_eq!(check_prefix("s3://media/"), Ok(()));
        assert!(check_prefix("file:///var/run/secrets/").is_err());
        assert!(check_prefix("file:///").is_err());
        assert!(check_prefix("file:///tmp/../etc/").is_err());
        assert!(check_prefix("ftp://x/").is_err());
        assert!(check_prefix("s3:///x").is_err());
    }
}
