//! Printing answers: `-o table` for people, `-o json` (stable) for scripts.

use comfy_table::{Table, presets::NOTHING};
use serde_json::Value;

use crate::Format;

/// A value as a table cell: sizes in binary units, maps as k=v lists.
fn cell(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n)
            if matches!(
                key,
                "size" | "logical" | "allocated" | "snapshot_only" | "bytes"
            ) =>
        {
            n.as_u64().map_or_else(|| n.to_string(), human)
        }
        Value::Number(n) if matches!(key, "created" | "received") => n
            .as_u64()
            .map_or_else(|| n.to_string(), |t| rfc3339(t / 1_000_000_000)),
        Value::Number(n) if key == "time_ms" => n
            .as_u64()
            .map_or_else(|| n.to_string(), |t| rfc3339(t / 1000)),
        Value::Array(items) => items
            .iter()
            .map(|i| cell("", i))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(map) if key == "members" => map
            .keys()
            .map(|k| if k.is_empty() { "-" } else { k })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell("", v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Seconds since the Unix epoch as `2026-11-23T19:40:25Z` (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Bytes in binary units: 1073741824 → 1G.
pub fn human(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            let whole = n >> shift;
            let rest = n & ((1 << shift) - 1);
            return if rest == 0 {
                format!("{whole}{unit}")
            } else {
                format!("{:.1}{unit}", n as f64 / (1u64 << shift) as f64)
            };
        }
    }
    n.to_string()
}

/// A list: a table of `columns`, or the JSON as it came.
pub fn print_list(format: Format, v: &Value, columns: &[&str]) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(v).expect("json prints"));
        return;
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(columns.iter().map(|c| c.to_uppercase()));
    for item in v.as_array().into_iter().flatten() {
        t.add_row(columns.iter().map(|c| cell(c, &item[*c])));
    }
    println!("{t}");
}

/// One object: `fields` one per line, or the JSON as it came.
pub fn print_object(format: Format, v: &Value, fields: &[&str]) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(v).expect("json prints"));
        return;
    }
    for f in fields {
        println!("{f:<10} {}", cell(f, &v[*f]));
    }
}

pub fn print_diff(format: Format, v: &Value) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(v).expect("json prints"));
        return;
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(["SLOT", "CHANGED BLOCKS", "CHANGED BYTES"]);
    if let Some(slots) = v["slots"].as_object() {
        for (slot, d) in slots {
            t.add_row([
                slot.clone(),
                cell("", &d["blocks"]),
                cell("bytes", &d["bytes"]),
            ]);
        }
    }
    println!("{t}");
}

pub fn done(format: Format, message: &str) {
    match format {
        Format::Json => println!("{}", serde_json::json!({"ok": true, "message": message})),
        Format::Table => println!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_and_sizes_print() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_463_225), "2026-11-23T19:47:05Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::human(1 << 30), "1G");
        assert_eq!(super::human(1536 << 20), "1.5G");
        assert_eq!(super::human(1000), "1000");
        assert_eq!(super::human(4095), "4.0K");
        // A recovery point's two times (nanoseconds) print alike.
        let ns = serde_json::json!(1_795_463_225_000_000_000u64);
        assert_eq!(super::cell("received", &ns), "2026-11-23T19:47:05Z");
        assert_eq!(super::cell("created", &ns), super::cell("received", &ns));
    }
}
