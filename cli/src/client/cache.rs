//! `kiln cache list|clear PROJECT`: a project's saved build caches (semantics §6), and dropping
//! them so the next build starts cold; `kiln cache stats`: the server's blob store traffic and
//! cache hit ratio.

use std::process::ExitCode;

use kiln_proto::v1::{
    CacheEntry, DeleteCachesRequest, GetStoreMetricsRequest, ListCachesRequest, StoreMetrics,
};

use super::connect::ServerArgs;
use super::Failure;

#[derive(clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(clap::Subcommand)]
enum CacheCommand {
    /// A project's caches, newest first: key, paths, size, the build that saved it
    List {
        project: String,
        /// Print the caches as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Removes a project's caches: the one with --key, the rolling one with --rolling, or --all
    Clear {
        project: String,
        /// The cache key to remove (every cache with that key, whatever its paths)
        #[arg(long, conflicts_with_all = ["rolling", "all"])]
        key: Option<String>,
        /// The rolling cache (a buildspec `cache` without `key`)
        #[arg(long, conflicts_with = "all")]
        rolling: bool,
        /// Every cache of the project
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The server's blob store traffic and cache hit ratio since it started
    Stats {
        /// Print the figures as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn cache(args: CacheArgs) -> Result<ExitCode, Failure> {
    match args.command {
        CacheCommand::List {
            project,
            json,
            server,
        } => {
            let server = server.connect().await?;
            let entries = server
                .client()
                .list_caches(ListCachesRequest { project })
                .await
                .map_err(|s| server.refused(s))?
                .into_inner()
                .entries;
            match json {
                true => out!("{:#}", to_json(&entries)),
                false => out!("{}", table(&entries).trim_end()),
            }
        }
        CacheCommand::Clear {
            project,
            key,
            rolling,
            all,
            server,
        } => {
            if key.is_none() && !rolling && !all {
                return Err(Failure::invalid(
                    "say which caches to clear: --key KEY, --rolling or --all",
                ));
            }
            let server = server.connect().await?;
            let request = DeleteCachesRequest {
                project: project.clone(),
                key: key.unwrap_or_default(),
                all,
            };
            let deleted = server
                .client()
                .delete_caches(request)
                .await
                .map_err(|s| server.refused(s))?
                .into_inner()
                .deleted;
            out!("removed {deleted} cache(s) of project {project}");
        }
        CacheCommand::Stats { json, server } => {
            let server = server.connect().await?;
            let metrics = server
                .client()
                .get_store_metrics(GetStoreMetricsRequest {})
                .await
                .map_err(|s| server.refused(s))?
                .into_inner();
            match json {
                true => out!("{:#}", stats_json(&metrics)),
                false => out!("{}", stats_text(&metrics)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn key_of(entry: &CacheEntry) -> &str {
    match entry.key.as_str() {
        "" => "(rolling)",
        key => key,
    }
}

fn table(entries: &[CacheEntry]) -> String {
    if entries.is_empty() {
        return "no caches".to_string();
    }
    let mut text = format!(
        "{:<32} {:>12} {:>8} {:<48} PATHS\n",
        "KEY", "BYTES", "FILES", "SAVED BY"
    );
    for e in entries {
        text.push_str(&format!(
            "{:<32} {:>12} {:>8} {:<48} {}\n",
            key_of(e),
            e.size,
            e.files,
            e.build_id,
            e.paths.join(" ")
        ));
    }
    text
}

fn to_json(entries: &[CacheEntry]) -> serde_json::Value {
    let caches: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "key": e.key,
                "paths": e.paths,
                "size": e.size,
                "files": e.files,
                "segments": e.segments,
                "createdMs": e.created_ms,
                "lastUsedMs": e.last_used_ms,
                "buildId": e.build_id,
            })
        })
        .collect();
    serde_json::json!({ "caches": caches })
}

/// `hits / (hits + misses)`, or `None` before the first lookup.
fn ratio(hits: u64, misses: u64) -> Option<f64> {
    let all = hits + misses;
    (all > 0).then(|| hits as f64 / all as f64)
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn stats_text(m: &StoreMetrics) -> String {
    format!(
        "blob store: {} bytes in, {} bytes out (as stored)\n\
         content already stored: {} of {} checks ({})\n\
         cache restores that found a cache: {} of {} ({})",
        m.bytes_in,
        m.bytes_out,
        m.blob_hits,
        m.blob_hits + m.blob_misses,
        percent(ratio(m.blob_hits, m.blob_misses)),
        m.cache_hits,
        m.cache_hits + m.cache_misses,
        percent(ratio(m.cache_hits, m.cache_misses)),
    )
}

fn stats_json(m: &StoreMetrics) -> serde_json::Value {
    serde_json::json!({
        "bytesIn": m.bytes_in,
        "bytesOut": m.bytes_out,
        "blobHits": m.blob_hits,
        "blobMisses": m.blob_misses,
        "cacheHits": m.cache_hits,
        "cacheMisses": m.cache_misses,
        "cacheHitRatio": ratio(m.cache_hits, m.cache_misses),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_rolling_cache() {
        let entries = [
            CacheEntry {
                key: "npm-abc".into(),
                paths: vec!["node_modules/**/*".into()],
                size: 1234,
                files: 7,
                build_id: "web:1".into(),
                ..Default::default()
            },
            CacheEntry {
                paths: vec!["/root/.m2/**/*".into()],
                build_id: "web:2".into(),
                ..Default::default()
            },
        ];
        let text = table(&entries);
        assert!(text.contains("npm-abc"), "{text}");
        assert!(text.contains("(rolling)"), "{text}");
        assert!(text.contains("/root/.m2/**/*"), "{text}");
        assert_eq!(table(&[]), "no caches");
        assert_eq!(to_json(&entries)["caches"][1]["key"], "");
    }

    #[test]
    fn stats_give_the_hit_ratio_once_there_were_lookups() {
        let mut m = StoreMetrics::default();
        assert!(stats_text(&m).contains("0 of 0 (-)"), "{}", stats_text(&m));
        assert_eq!(stats_json(&m)["cacheHitRatio"], serde_json::Value::Null);
        m.cache_hits = 3;
        m.cache_misses = 1;
        assert!(
            stats_text(&m).contains("3 of 4 (75.0%)"),
            "{}",
            stats_text(&m)
        );
        assert_eq!(stats_json(&m)["cacheHitRatio"], 0.75);
    }
}
