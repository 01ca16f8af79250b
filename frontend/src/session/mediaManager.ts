// A microphone manager for SmallWebRTCTransport built on getUserMedia alone.
//
// The transport's default media manager (DailyMediaManager) drives the mic through
// daily-js's call object, which loads Daily's "call machine" script from Daily's
// CDN at run time. A self-hosted voicepool must not depend on that (and our CSP,
// script-src 'self', rightly blocks it), so we hand the transport this one: it
// opens the microphone itself and gives the transport the track through
// `tracks().local.audio`, which the transport puts on its audio transceiver.
// It implements the media-manager interface the transport calls (see
// SmallWebRTCTransport in @pipecat-ai/small-webrtc-transport).

import {
  DeviceError,
  type DeviceErrorType,
  type PipecatClientOptions,
  type RTVIEventCallbacks,
  type Tracks,
} from "@pipecat-ai/client-js";

const LOCAL = { id: "local", name: "", local: true };

function deviceErrorType(error: unknown): DeviceErrorType {
  switch ((error as { name?: string } | null)?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "permissions";
    case "NotFoundError":
    case "OverconstrainedError":
      return "not-found";
    case "NotReadableError":
    case "AbortError":
      return "in-use";
    default:
      return "unknown";
  }
}

export class BrowserMediaManager {
  private callbacks: RTVIEventCallbacks = {};
  private options: PipecatClientOptions | undefined;
  private micEnabled = true;
  private stream: MediaStream | null = null;
  private micDevice: MediaDeviceInfo | Record<string, never> = {};
  private micId: string | undefined;

  readonly supportsScreenShare = false;

  /** `sendTrack`: puts a new microphone track on the call's connection (a mic switched
   * mid-call), as the transport's own media manager does with its track callback. */
  constructor(private readonly sendTrack?: (track: MediaStreamTrack) => Promise<void> | void) {}

  setUserAudioCallback(): void {
    // Raw PCM callbacks are for WebSocket transports; WebRTC sends the track.
  }

  setClientOptions(options: PipecatClientOptions, override = false): void {
    if (this.options && !override) return;
    this.options = options;
    this.callbacks = options.callbacks ?? {};
    this.micEnabled = options.enableMic ?? true;
  }

  private liveTrack(): MediaStreamTrack | undefined {
    const track = this.stream?.getAudioTracks()[0];
    return track && track.readyState === "live" ? track : undefined;
  }

  /** Open the microphone (asks for permission the first time). */
  async initialize(): Promise<void> {
    if (this.liveTrack()) return;
    if (!navigator.mediaDevices?.getUserMedia) {
      const error = new DeviceError(["mic"], "undefined-mediadevices", "navigator.mediaDevices is unavailable (not a secure context?)");
      this.callbacks.onDeviceError?.(error);
      throw error;
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: {
          deviceId: this.micId ? { exact: this.micId } : undefined,
          echoCancellation: true,
          noiseSuppression: true,
          autoGainControl: true,
        },
        video: false,
      });
    } catch (cause) {
      const message = cause instanceof Error ? cause.message : String(cause);
      const error = new DeviceError(["mic"], deviceErrorType(cause), message, {
        sourceError: cause instanceof Error ? cause : new Error(message),
      });
      this.callbacks.onDeviceError?.(error);
      throw error;
    }
    const track = this.liveTrack();
    if (track) track.enabled = this.micEnabled;
    await this.refreshDevices(track);
  }

  private async refreshDevices(track: MediaStreamTrack | undefined): Promise<void> {
    try {
      const devices = await navigator.mediaDevices.enumerateDevices();
      const mics = devices.filter((d) => d.kind === "audioinput");
      this.callbacks.onAvailableMicsUpdated?.(mics);
      this.callbacks.onAvailableSpeakersUpdated?.(devices.filter((d) => d.kind === "audiooutput"));
      const id = track?.getSettings().deviceId;
      const mic = mics.find((d) => d.deviceId === id) ?? mics[0];
      if (mic) {
        this.micDevice = mic;
        this.callbacks.onMicUpdated?.(mic);
      }
    } catch {
      // enumerateDevices is best effort
    }
  }

  async connect(): Promise<void> {
    await this.initialize();
    const track = this.liveTrack();
    if (track) this.callbacks.onTrackStarted?.(track, LOCAL);
  }

  async disconnect(): Promise<void> {
    const tracks = this.stream?.getTracks() ?? [];
    this.stream = null;
    for (const track of tracks) {
      track.stop();
      this.callbacks.onTrackStopped?.(track, LOCAL);
    }
  }

  /** Release the microphone without a connection (e.g. the session could not start). */
  release(): Promise<void> {
    return this.disconnect();
  }

  async userStartedSpeaking(): Promise<unknown> {
    return undefined;
  }

  bufferBotAudio(): undefined {
    return undefined;
  }

  async getAllMics(): Promise<MediaDeviceInfo[]> {
    return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  }

  async getAllCams(): Promise<MediaDeviceInfo[]> {
    return [];
  }

  async getAllSpeakers(): Promise<MediaDeviceInfo[]> {
    return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audiooutput");
  }

  async updateMic(micId: string): Promise<void> {
    this.micId = micId || undefined;
    if (!this.stream) return; // not in a call: the next one opens this microphone
    const old = this.liveTrack();
    this.stream = null;
    await this.initialize();
    const track = this.liveTrack();
    if (track) {
      await this.sendTrack?.(track);
      this.callbacks.onTrackStarted?.(track, LOCAL); // the level meter follows
    }
    if (old) {
      old.stop();
      this.callbacks.onTrackStopped?.(old, LOCAL);
    }
  }

  updateCam(): void {}

  updateSpeaker(): void {}

  get selectedMic(): MediaDeviceInfo | Record<string, never> {
    return this.micDevice;
  }

  get selectedCam(): Record<string, never> {
    return {};
  }

  get selectedSpeaker(): Record<string, never> {
    return {};
  }

  enableMic(enable: boolean): void {
    this.micEnabled = enable;
    const track = this.liveTrack();
    if (track) track.enabled = enable;
  }

  enableCam(): void {}

  enableScreenShare(): void {}

  get isCamEnabled(): boolean {
    return false;
  }

  get isMicEnabled(): boolean {
    return this.micEnabled;
  }

  get isSharingScreen(): boolean {
    return false;
  }

  tracks(): Tracks {
    const audio = this.liveTrack();
    return { local: audio ? { audio } : {} };
  }
}
