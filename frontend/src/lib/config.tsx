import { createContext, useContext, useEffect, useState, type ReactNode } from "react";
import { apiProblem, type Problem } from "../session/messages";
import { api } from "./api";
import type { ServerConfig } from "./types";

interface ConfigState {
  config: ServerConfig | null;
  problem: Problem | null;
}

export const ConfigContext = createContext<ConfigState>({ config: null, problem: null });

/** GET /api/config once per sign-in: profiles, transports, pools, ICE servers, Grafana link. */
export function ConfigProvider({ children }: { children: ReactNode }) {
  const [state, setState] = useState<ConfigState>({ config: null, problem: null });
  useEffect(() => {
    let cancelled = false;
    api
      .config()
      .then((config) => !cancelled && setState({ config, problem: null }))
      .catch((error) => !cancelled && setState({ config: null, problem: apiProblem(error, "Could not load the server's settings") }));
    return () => {
      cancelled = true;
    };
  }, []);
  return <ConfigContext.Provider value={state}>{children}</ConfigContext.Provider>;
}

export const useConfig = () => useContext(ConfigContext);
